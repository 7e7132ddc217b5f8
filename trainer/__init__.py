"""kubetrain's trainer: data, models, distributed training, export and the model server."""
