"""One module per `tinystories` subcommand, named as the subcommand; each `main(argv)` reads as the
pipeline it runs."""
