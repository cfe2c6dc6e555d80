import math

import pytest
import torch
from torch import nn

import nowt
from nowt.noise_measures import (
    affine_images,
    area_under_curve,
    effective_rank,
    generalization_gap,
    mean_neuron_angles,
    neuron_angles,
    ood_images,
)


def test_effective_rank_of_known_spectra():
    # singular values (3, 1): p = (3/4, 1/4), H = -(3/4 ln 3/4 + 1/4 ln 1/4)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.double))
    m = (
        q[:, :2] @ torch.diag(torch.tensor([3.0, 1.0], dtype=torch.double)) @ q[:2, :]
    )  # rotated, same spectrum
    assert effective_rank(m) == pytest.approx(math.exp(h), rel=1e-9)
    assert effective_rank(torch.eye(7)) == pytest.approx(7.0, rel=1e-6)
    assert effective_rank(torch.outer(torch.randn(5), torch.randn(3))) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="matrix"):
        effective_rank(torch.ones(3))


def test_neuron_angles_of_a_constructed_pair():
    # input unit i's forward weights are column i of W; column i of B is built at a known angle to it
    w = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    b = torch.tensor([[1.0, 0.0, -2.0], [1.0, -1.0, 0.0]])
    # unit 0: (1,0) vs (1,1) = 45; unit 1: (0,3) vs (0,-1) = 180; unit 2: (2,0) vs (-2,0) = 180
    assert torch.allclose(neuron_angles(w, b), torch.tensor([45.0, 180.0, 180.0], dtype=torch.double))
    b[:, 2] = torch.tensor([0.0, 5.0])  # orthogonal
    assert neuron_angles(w, b)[2].item() == pytest.approx(90.0)
    assert math.isnan(neuron_angles(w, torch.zeros_like(w))[0].item())
    with pytest.raises(ValueError, match="shapes differ"):
        neuron_angles(w, b.t())


def test_neuron_angles_of_conv_kernels_group_by_input_channel():
    w, b = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    for i, a in enumerate(neuron_angles(w, b)):
        assert a.item() == pytest.approx(nowt.angle(w[:, i], b[:, i]), abs=1e-9)


def test_mean_neuron_angles_on_models():
    torch.manual_seed(0)
    model = nowt.convert(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), "fa", seed=0)
    got = mean_neuron_angles(model)
    assert got["2"] == pytest.approx(float(neuron_angles(model[2].weight, model[2].feedback).mean()))
    bp = nowt.convert(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), "bp")
    assert set(mean_neuron_angles(bp).values()) == {0.0}


def test_mean_neuron_angles_skip_zero_units_but_not_nan_weights():
    """A dead unit (zero column of W) has no angle and is left out of the mean; a nan in W is not a dead
    unit: nanmean dropped it too and reported a finite mean for a broken layer (88.66 degrees here)."""
    torch.manual_seed(0)
    model = nowt.convert(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), "fa", seed=0)
    w, b = model[2].weight, model[2].feedback
    with torch.no_grad():
        w[:, 1] = 0
    live = [nowt.angle(w[:, i], b[:, i]) for i in (0, 2, 3, 4)]
    assert mean_neuron_angles(model)["2"] == pytest.approx(sum(live) / 4, abs=1e-9)
    with torch.no_grad():
        w[0, 0] = math.nan
    assert math.isnan(mean_neuron_angles(model)["2"])
    with torch.no_grad():
        w[0, 0], b[1, 3] = 1.0, math.inf
    assert math.isnan(mean_neuron_angles(model)["2"])


def test_mean_neuron_angles_group_by_input_unit_for_weights_stored_in_out():
    """A transposed convolution (and GPT-2's Conv1D) stores W as (in, out): grouping by dim 1 averaged over
    output units. Locally connected layers, whose columns are patch offsets, are left out."""
    from nowt.lc import LocallyConnected2d

    torch.manual_seed(0)
    model = nowt.convert(nn.Sequential(nn.ConvTranspose1d(5, 3, 2), nn.Tanh(), nn.Flatten(),
                                       nn.Unflatten(1, (1, 3, 3)), LocallyConnected2d(1, 2, 2, input_size=3)),
                         "fa", seed=0)
    w, b = model[0].weight, model[0].feedback
    expected = sum(nowt.angle(w[i], b[i]) for i in range(5)) / 5  # input unit i: row i
    assert set(mean_neuron_angles(model)) == {"0"}
    assert mean_neuron_angles(model)["0"] == pytest.approx(expected, abs=1e-4)


def test_area_under_curve_against_hand_values():
    # 0 -> 100 linearly over [0, 2]: area 100, mean height 50
    assert area_under_curve([0.0, 50.0, 100.0]) == pytest.approx(50.0)
    assert area_under_curve([0.0, 50.0, 100.0], normalize=False) == pytest.approx(100.0)
    # non-uniform x: trapezoids (0..1: (10+30)/2) + (1..4: (30+90)/2 * 3) = 20 + 180 = 200 over length 4
    assert area_under_curve([10.0, 30.0, 90.0], [0, 1, 4], normalize=False) == pytest.approx(200.0)
    assert area_under_curve([10.0, 30.0, 90.0], [0, 1, 4]) == pytest.approx(50.0)
    # a curve that rises sooner scores higher
    assert area_under_curve([0, 90, 90, 90]) > area_under_curve([0, 0, 0, 90])
    with pytest.raises(ValueError, match="increasing"):
        area_under_curve([1.0, 2.0], [1, 1])


def test_generalization_gap_by_hand():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    train = (x, torch.tensor([0, 1]))  # both right
    test = (x, torch.tensor([0, 0]))  # one right
    gap = generalization_gap(model, train, test)
    assert gap["accuracy"] == pytest.approx(50.0)
    # logits (1,0) and (0,1): the right class costs ln(1 + e^-1), the wrong one ln(1 + e)
    right, wrong = math.log(1 + math.exp(-1)), math.log(1 + math.e)
    assert gap["loss"] == pytest.approx((right + wrong) / 2 - right, rel=1e-6)


def _dot(r: int, c: int, size: int = 28) -> torch.Tensor:
    x = torch.zeros(1, 1, size, size)
    x[0, 0, r, c] = 1.0
    return x


def _centroid(x: torch.Tensor) -> tuple[float, float]:
    i = torch.arange(x.shape[-1], dtype=x.dtype)
    img = x[0, 0]
    return float((img.sum(1) * i).sum() / img.sum()), float((img.sum(0) * i).sum() / img.sum())


def test_translation_moves_pixels_exactly():
    moved = affine_images(_dot(5, 20), shift=(3.0, -2.0))  # 3 right, 2 up
    assert torch.allclose(moved, _dot(3, 23), atol=1e-5)


def test_rotation_by_90_is_rot90_counter_clockwise():
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(affine_images(x, angle=90.0), torch.rot90(x, 1, (-2, -1)), atol=1e-5)
    # a point right of the centre (13.5, 13.5) goes above it
    r, c = _centroid(affine_images(_dot(13, 20) + _dot(14, 20), angle=90.0))
    assert (r, c) == (pytest.approx(13.5 - 6.5, abs=1e-4), pytest.approx(13.5, abs=1e-4))


def test_scaling_moves_a_pixel_away_from_the_centre_by_the_factor():
    # pixel at (17, 11): offset (3.5, -2.5) from the centre (13.5, 13.5); scale 2 puts it at (20.5, 8.5)
    out = affine_images(_dot(17, 11), scale=2.0)
    r, c = _centroid(out)
    assert r == pytest.approx(20.5, abs=1e-4) and c == pytest.approx(8.5, abs=1e-4)
    assert float(out.sum()) == pytest.approx(4.0, abs=1e-4)  # bilinear spreads the dot over s^2 its area


def test_per_image_parameters_and_ood_variants():
    x = torch.cat([_dot(10, 10), _dot(10, 10)])
    out = affine_images(x, shift=torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    assert torch.allclose(out[0:1], _dot(10, 11), atol=1e-5) and torch.allclose(
        out[1:2], _dot(12, 10), atol=1e-5
    )
    # translate: every image moved exactly `magnitude` pixels (centroid distance), seeded directions
    imgs = torch.zeros(8, 1, 28, 28)
    imgs[:, :, 12:16, 12:16] = 1.0
    moved = ood_images(imgs, "translate", 3.0, seed=1)
    for k in range(8):
        r, c = _centroid(moved[k : k + 1])
        assert math.hypot(r - 13.5, c - 13.5) == pytest.approx(3.0, abs=1e-3)
    assert torch.equal(moved, ood_images(imgs, "translate", 3.0, seed=1))
    rotated = ood_images(_dot(13, 20).expand(16, 1, 28, 28).contiguous(), "rotate", 90.0, seed=0)
    rows = {round(_centroid(rotated[k : k + 1])[0], 3) for k in range(16)}
    assert rows == {7.0, 20.0}  # turned up (counter-clockwise) or down (clockwise)
    with pytest.raises(ValueError, match="OOD kind"):
        ood_images(imgs, "shear", 1.0)
