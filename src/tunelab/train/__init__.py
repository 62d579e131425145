"""The one training loop every stage uses: `from tunelab.train.loop import train`."""
