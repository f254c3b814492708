"""Raw data: the tuber photo simulator, image reading and dataset splits."""
