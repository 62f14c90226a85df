"""One training loop for every model in ldmcli; models plug in through a TrainTask."""

from ldmcli.train.loop import train
from ldmcli.train.task import Phase, TrainTask

__all__ = ["Phase", "TrainTask", "train"]
