"""One module per Ray job entrypoint: `python -m jobs.<name> --config FILE --set key=value`."""
