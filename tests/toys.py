"""A toy student and fixed inputs shared by the distributed and accumulation tests."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from clipdistill import Embeddings, losses
from clipdistill.losses.objective import build_objective
from clipdistill.train.step import Distiller

N, D_IN, D_S, D_T = 8, 12, 6, 10
# CLIP-CID: k-means centroids live in teacher space (D_T); labels are the teacher's nearest centroid.
_CENTROIDS = F.normalize(torch.randn(40, D_T, generator=torch.Generator().manual_seed(7)), dim=-1)
# What a registered loss needs beyond its defaults to run on the toy inputs. A new loss that needs
# something gets a line here; one that needs nothing is picked up from losses.names() as it is.
LOSS_KWARGS = {
    "cid_cluster": {"centroids": _CENTROIDS[:5]},
    "sigmoid_kd": {"teacher_scale": 10.0},  # the toy teacher is softmax-trained: no logit bias
    # The toy student is a Linear, with no patches for feature_only's second, masked view (tested on ViTs:
    # tests/train/test_mfd_masked.py); `all` asks it for patch dropout, which a toy ignores.
    "mfd": {"masked": "all"},
}
# Each registered loss alone (so per-loss gradients are compared), some variants, and the recipes.
CASES = {name: {name: dict(LOSS_KWARGS.get(name, {}))} for name in losses.names()}
CASES["crd_T2"] = {"crd": {"temperature": 2.0}}
CASES["clipkd"] = {"clip": {"weight": 1.0}, "fd": {"weight": 3.9}, "crd": {"weight": 1.0}, "icl": {"weight": 1.0}}
CASES["cid_cluster_partial_fc"] = {"cid_cluster": {"centroids": _CENTROIDS, "sample_fraction": 0.3, "learnable": True}}
CASES["sigmoid"] = {"siglip": {"weight": 1.0}, "sigmoid_kd": {"weight": 1.0, "teacher_scale": 10.0}}
CASES["clipcid"] = {"clip": {"weight": 1.0}, "cid_cluster": {"weight": 1.0, "centroids": _CENTROIDS[:5]},
                    "cid_instance": {"weight": 1.0}}
# The CLIP-KD reference's scales: κ learned raw (not exp), from ln(1/0.07) = 2.659.
RAW = {"scale_param": "raw", "init_scale": 2.659}
CASES["reference_scales"] = {"icl": dict(RAW), "cross_kd": dict(RAW), "afd": dict(RAW), "cid_instance": dict(RAW)}
# Every term that owns a head, for train.heads=shared (one head, and one cross scale, for all of them).
CASES["every_head"] = {"clip": {"weight": 1.0}, "fd": {"weight": 3.9}, "icl": dict(RAW), "cross_kd": dict(RAW),
                       "gd": {"weight": 0.5}, "afd": {"weight": 0.5}, "cid_instance": dict(RAW),
                       "cid_cluster": {"weight": 0.5, "centroids": _CENTROIDS[:5]}}
HEADS = ("per_loss", "shared")
# The cases the 2-rank check also runs with train.heads=shared (their terms share heads and scales).
SHARED_CASES = ("clipkd", "clipcid", "every_head")


class ToyStudent(nn.Module):
    """Just enough of an open_clip model: two linear towers and a logit scale."""

    def __init__(self):
        super().__init__()
        self.visual = nn.Linear(D_IN, D_S)
        self.textual = nn.Linear(D_IN, D_S)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def encode_image(self, x, normalize=False):
        return self.visual(x)

    def encode_text(self, x, normalize=False):
        return self.textual(x)


def make_inputs():
    g = torch.Generator().manual_seed(123)
    images, tokens = torch.randn(N, D_IN, generator=g), torch.randn(N, D_IN, generator=g)
    teacher = Embeddings(F.normalize(torch.randn(N, D_T, generator=g), dim=-1),
                         F.normalize(torch.randn(N, D_T, generator=g), dim=-1), torch.tensor(50.0), normalized=True)
    return images, tokens, teacher


def make_model(specs, local_loss=False, seed=0, heads="per_loss"):
    torch.manual_seed(seed)
    return Distiller(ToyStudent(), build_objective(specs, student_dim=D_S, teacher_dim=D_T, local_loss=local_loss,
                                                   heads=heads))


# Two teachers of different widths and scales (an ensemble): the second's embeddings are D_T2 wide.
D_T2 = 7
ENSEMBLE_WEIGHTS = (2.0, 1.0)
# Every loss that takes a teacher, and the recipes, each with the two teachers.
# cid_cluster's fixed centroids live in one teacher's space: no ensemble case holds it.
ENSEMBLE_CASES = {name: specs for name, specs in CASES.items()
                  if losses.needs_teacher(specs) and not any(term.startswith("cid_cluster") for term in specs)}
ENSEMBLE_CASES["clipcid"] = {"clip": {"weight": 1.0}, "cid_instance": {"weight": 1.0}}


def make_ensemble_inputs():
    from clipdistill.ensemble import TeacherEnsemble

    images, tokens, first = make_inputs()
    g = torch.Generator().manual_seed(321)
    second = Embeddings(F.normalize(torch.randn(N, D_T2, generator=g), dim=-1),
                        F.normalize(torch.randn(N, D_T2, generator=g), dim=-1), torch.tensor(20.0), normalized=True)
    return images, tokens, TeacherEnsemble.weighted([first, second], ENSEMBLE_WEIGHTS)


def make_ensemble_model(specs, local_loss=False, seed=0, heads="per_loss"):
    torch.manual_seed(seed)
    return Distiller(ToyStudent(), build_objective(specs, student_dim=D_S, teacher_dim=[D_T, D_T2],
                                                   local_loss=local_loss, heads=heads))
