"""``python -m common.report RUN_DIR``: a run's training curves as a PNG (``common.report.curves``)."""
from common.report.curves import get_args_parser, main

if __name__ == "__main__":
    main(get_args_parser().parse_args())
