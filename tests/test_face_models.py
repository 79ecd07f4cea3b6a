"""Every face model: gradients reach the input, weights are checked, recognition works on real faces.

That every model config instantiates is tests/test_configs.py's.
"""

import pytest
import torch

from cloak.models.dlib_resnet import DlibResNet, load_dlib_resnet
from cloak.models.ensemble import Ensemble, GaussianSmoothed
from cloak.models.facenet import FacenetEmbedder, load_facenet
from cloak.models.weights import WeightsUnavailableError


@pytest.fixture(scope="module")
def dlib_model() -> DlibResNet:
    return load_dlib_resnet()


@pytest.mark.parametrize(
    "make",
    [DlibResNet, FacenetEmbedder, lambda: GaussianSmoothed(DlibResNet(), sigma=1.5)],
    ids=["dlib_resnet", "facenet", "smoothed"],
)
def test_gradient_reaches_the_input(make):
    model = make().eval()
    h, w = model.input_size
    x = torch.rand(2, 3, h, w, requires_grad=True)
    model(x)[:, 0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_wrong_input_shape_is_refused():
    with pytest.raises(ValueError, match=r"\[B, 3, 150, 150\]"):
        DlibResNet()(torch.rand(1, 3, 160, 160))


def test_missing_facenet_weights_say_what_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("cloak.models.facenet.download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        load_facenet("vggface2")
    message = str(err.value)
    assert "20180402-114759-vggface2.pt" in message and "github.com/timesler/facenet-pytorch" in message
    assert "model.weights=" in message and str(tmp_path / "torch" / "checkpoints") in message
    assert not (tmp_path / "torch" / "checkpoints" / "20180402-114759-vggface2.pt").exists()
    with pytest.raises(WeightsUnavailableError, match="not found at"):
        load_facenet("vggface2", weights=tmp_path / "nope.pt")


def test_facenet_weights_are_checked_against_their_hash(facenet_file):
    with pytest.raises(ValueError, match="SHA-256"):
        load_facenet("vggface2", weights=facenet_file)  # the pinned hash is the real release's
    assert isinstance(load_facenet("vggface2", weights=facenet_file, sha256=None), FacenetEmbedder)


def test_ensemble_weights_are_checked():
    with pytest.raises(ValueError, match="unknown members"):
        Ensemble({"a": DlibResNet()}, weights={"b": 1.0})
    ens = Ensemble({"a": DlibResNet(), "b": DlibResNet()}, weights={"a": 3.0})
    assert ens.weights == pytest.approx({"a": 0.75, "b": 0.25})


def test_ensemble_normalises_each_members_loss_by_its_threshold():
    """A member whose same-person threshold sits closer to 1 needs less movement: it weighs more."""
    crowded, spread = DlibResNet(), DlibResNet()
    crowded.cosine_threshold, spread.cosine_threshold = 0.9, 0.4  # scales 0.1 and 0.6
    ens = Ensemble({"crowded": crowded, "spread": spread})
    assert ens.weights == pytest.approx({"crowded": 6 / 7, "spread": 1 / 7})
    # Relative to user weights, and off on request.
    ens = Ensemble({"crowded": crowded, "spread": spread}, weights={"crowded": 1.0, "spread": 6.0})
    assert ens.weights == pytest.approx({"crowded": 0.5, "spread": 0.5})
    plain = Ensemble({"crowded": crowded, "spread": spread}, normalise=False)
    assert plain.weights == pytest.approx({"crowded": 0.5, "spread": 0.5})
    spread.cosine_threshold = 1.0
    with pytest.raises(ValueError, match="cosine_threshold"):
        Ensemble({"crowded": crowded, "spread": spread})


def test_dlib_resnet_verifies_lfw_with_our_alignment(dlib_model, lfw_dev):
    from cloak.evaluation.trackers.verification import verification_auc

    auc, (n_same, n_diff) = verification_auc(dlib_model, lfw_dev, identities=50, per_identity=5)
    assert n_same > 100 and n_diff > 1000
    assert auc >= 0.99, f"ROC AUC {auc:.4f} over 50 lfw-dev identities"


def test_our_alignment_agrees_with_dlibs_pipeline(dlib_model, lfw_dev):
    from cloak.evaluation.trackers.verification import alignment_agreement

    mean, n = alignment_agreement(dlib_model, lfw_dev, limit=40)
    assert n >= 30
    assert mean >= 0.97, f"mean cosine {mean:.4f} between our and dlib's alignment over {n} faces"


def test_ensemble_leaves_out_optional_members_without_weights(tmp_path):
    """facenet joins the default ensemble only when its weights are on the machine; nothing is downloaded."""
    from omegaconf import OmegaConf

    from cloak.models.ensemble import build_ensemble
    from cloak.models.weights import WeightsUnavailableError

    missing = {
        "_target_": "cloak.models.facenet.load_facenet",
        "weights": str(tmp_path / "absent.pt"),
        "download": False,
    }
    members = OmegaConf.create({"dlib": {"_target_": "cloak.models.dlib_resnet.DlibResNet"}, "facenet": missing})
    ens = build_ensemble(members, weights={"dlib": 1.0, "facenet": 2.0}, optional=["facenet"])
    assert list(ens.weights) == ["dlib"] and ens.weights["dlib"] == pytest.approx(1.0)
    with pytest.raises(Exception) as err:
        build_ensemble(members)
    chain, cause = [], err.value
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__
    assert any(isinstance(c, WeightsUnavailableError) for c in chain)
    with pytest.raises(ValueError, match="unknown members"):
        build_ensemble(members, optional=["arcface"])
