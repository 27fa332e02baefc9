"""Datasets as in-memory uint8 frame sets, split into train / val / test."""
