"""The embedded default model: a class-conditional UNet and a classifier on 8x8 digits."""
