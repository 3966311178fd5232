"""The logging of `discoseg serve`: uvicorn's own configuration, with the service's loggers
(start-up, jobs submitted, finished and cancelled, errors) written by uvicorn's handler, at the
level asked for. Without it only uvicorn's loggers have a handler, and INFO lines are lost."""

import copy

from uvicorn.config import LOGGING_CONFIG


def serve_log_config(level: str) -> dict:
    """A logging.config.dictConfig dict: uvicorn's, plus the `service` loggers at `level`."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["service"] = {
        "handlers": ["default"], "level": level.upper(), "propagate": False,
    }
    return config
