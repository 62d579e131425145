"""Training stages: each is a batch source, a loss_fn and a main, on the one loop in tunelab.train."""
