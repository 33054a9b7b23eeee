"""deploykit: build an image once, publish it under immutable tags, deploy by pull + up."""

__version__ = "1.0.0"
