"""Training VAEs: the plain loop, the fused loop, and what both share. Pure torch; no MLflow, no Optuna.

* :mod:`~tubervae.training.setting`: one hyperparameter setting of one family (`Setting`), and a
  finished run's `Outcome`;
* :mod:`~tubervae.training.loop`: `train_model`, one setting and one seed, read top to bottom;
* :mod:`~tubervae.training.fused`: `train_fused`, many models as one vmapped model, each equal to
  its separately trained twin;
* :mod:`~tubervae.training.running`: what both loops do as their steps run (segments, what a step
  closes, the running means of the loss terms, the finite checks);
* :mod:`~tubervae.training.checkpoints`: a run's checkpoint, its identity, written and read;
* :mod:`~tubervae.training.device`: the device, the precision, compiling, the fused Adam.

Reading a trained model on photos (`encode`, `probe_latents`, ...) is no part of training: it
lives with the networks, in :mod:`tubervae.models.encoding`.
"""
