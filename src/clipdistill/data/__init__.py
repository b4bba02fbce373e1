"""Image–text pair data: procedural shapes, CSV/TSV files, WebDataset shards, and the training loader."""
from clipdistill.data.bad_samples import BadSample, decode_image
from clipdistill.data.batch import Batch, sample_generator
from clipdistill.data.csv_pairs import CsvPairs
from clipdistill.data.datasets import KINDS, build_dataset
from clipdistill.data.loader import train_batches
from clipdistill.data.shards import ShardPairs, expand_shards
from clipdistill.data.synthetic import SyntheticClassification, SyntheticPairs, SyntheticRetrieval

__all__ = [
    "KINDS", "BadSample", "Batch", "CsvPairs", "ShardPairs", "SyntheticClassification", "SyntheticPairs",
    "SyntheticRetrieval", "build_dataset", "decode_image", "expand_shards", "sample_generator",
    "train_batches",
]
