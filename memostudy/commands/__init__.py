"""One thin module per `memostudy` verb; each exposes ``register(subparsers)``."""
