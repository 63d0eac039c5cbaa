"""ai.hashing model, losses and encode: shapes, determinism, a training step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ai.hashing.infer import encode
from ai.hashing.losses import LossConfig, contrastive_loss, hashing_loss, quantization_loss
from ai.hashing.model import HashNet, HashNetConfig

TINY = HashNetConfig(
    in_channels=3,
    roi_size=32,
    n_bits=24,
    growth=6,
    block_layers=2,
    stem_channels=8,
    embedding_dim=16,
)


def _rois(n: int, cfg: HashNetConfig = TINY, seed: int = 0) -> np.ndarray:
    return (
        np.random.default_rng(seed)
        .random((n, cfg.in_channels, cfg.roi_size, cfg.roi_size))
        .astype(np.float32)
    )


@pytest.mark.parametrize("n_bits", [24, 64])
def test_forward_shapes(n_bits: int) -> None:
    cfg = HashNetConfig(roi_size=32, n_bits=n_bits, in_channels=5, growth=4, embedding_dim=8)
    with torch.no_grad():
        out = HashNet(cfg).eval()(torch.from_numpy(_rois(2, cfg)))
    for code in (out.shallow, out.middle, out.deep):
        assert code.shape == (2, n_bits)
    assert out.embedding.shape == (2, 8)
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(2))
    assert out.size_logits.shape == (2, 8) and out.texture_logits.shape == (2, 3)
    assert out.reconstruction.shape == (2, 5, 32, 32)
    assert float(out.reconstruction.min()) >= 0 and float(out.reconstruction.max()) <= 1


def test_default_model_is_small() -> None:
    model = HashNet()
    assert model.n_parameters() * 4 <= 20 * 2**20
    with pytest.raises(ValueError):
        HashNetConfig(roi_size=60)


def test_encode_is_deterministic_and_batch_independent() -> None:
    torch.manual_seed(0)
    model = HashNet(TINY)
    rois = _rois(10)
    a = encode(model, rois, batch_size=4, model_version="v-test")
    b = encode(model, rois, batch_size=4)
    for name in ("shallow", "middle", "deep", "embedding", "size_probs", "texture_probs"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = encode(model, rois, batch_size=10)
    np.testing.assert_allclose(c.embedding, a.embedding, atol=1e-5)
    assert a.shallow.shape == (10, 3) and a.rows().shape == (10, 9) and a.model_version == "v-test"
    np.testing.assert_allclose(a.size_probs.sum(1), 1, rtol=1e-5)
    assert not model.training


def test_encode_rejects_bad_input() -> None:
    model = HashNet(TINY)
    with pytest.raises(ValueError, match="rois must be"):
        encode(model, _rois(2)[:, :2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encode(model, _rois(2) * 2)
    assert len(encode(model, _rois(0))) == 0


def test_contrastive_and_quantization_terms_hand_made() -> None:
    b = torch.tensor([[1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    same = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    # pairs: (0,1) similar at d2=0 -> 0; (0,2),(1,2) dissimilar at d2/K=4 >= margin 2 -> 0
    assert float(contrastive_loss(b, same, margin=2.0)) == pytest.approx(0.0)
    # all pairs "similar": 0.5 * d2/K averaged: (0 + 4 + 4) / 3 * 0.5
    assert float(contrastive_loss(b, torch.ones(3, 3, dtype=torch.bool), 2.0)) == pytest.approx(
        4 / 3
    )
    # flipped: (0,1) dissimilar at d2=0 -> 0.5 * margin; the other two similar at 0 -> 0
    assert float(contrastive_loss(torch.zeros(3, 2), ~same, 2.0)) == pytest.approx(1 / 3)
    assert float(quantization_loss(b)) == 0.0
    assert float(quantization_loss(torch.zeros(2, 2))) == 1.0


def test_a_few_training_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    model = HashNet(TINY)
    rng = np.random.default_rng(0)
    sizes = torch.from_numpy(rng.integers(0, 8, 16))
    textures = torch.from_numpy(rng.integers(0, 3, 16))
    # ROIs carry their labels: a disc whose radius follows the size class
    yy, xx = np.mgrid[:32, :32]
    rois = np.zeros((16, 3, 32, 32), np.float32)
    for i, s in enumerate(sizes.tolist()):
        rois[i, :] = ((yy - 16) ** 2 + (xx - 16) ** 2 <= (2 + 1.5 * s) ** 2) * (
            0.4 + 0.2 * textures[i].item()
        )
    x = torch.from_numpy(rois)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    cfg = LossConfig()
    model.train()
    first = hashing_loss(model(x), x, sizes, textures, cfg)
    assert set(first.parts) == {
        "ce_size",
        "ce_texture",
        "reconstruction",
        "contrastive",
        "quantization",
    }
    for _ in range(8):
        opt.zero_grad()
        loss = hashing_loss(model(x), x, sizes, textures, cfg).total
        loss.backward()
        opt.step()
    last = hashing_loss(model(x), x, sizes, textures, cfg)
    assert float(last.total.detach()) < 0.8 * float(first.total.detach()), (first.parts, last.parts)


def test_loss_uses_the_similarity_of_each_layer() -> None:
    from ai.hashing.model import HashNetOutput

    # two ROIs of the same size class, other textures, with identical codes in every layer
    codes = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    x = torch.zeros(2, 3, 16, 16)
    heads = (torch.zeros(2, 4), torch.zeros(2, 8), torch.zeros(2, 3))
    out = HashNetOutput(codes, codes, codes, *heads, x)
    sizes, textures = torch.tensor([3, 3]), torch.tensor([0, 2])
    by_size = hashing_loss(out, x, sizes, textures, LossConfig(similar=("size", "size", "size")))
    mixed = hashing_loss(out, x, sizes, textures, LossConfig())
    # dissimilar-at-distance-0 costs margin / 2 = 1 per layer that asks for texture too
    assert by_size.parts["contrastive"] == pytest.approx(0.0)
    assert mixed.parts["contrastive"] == pytest.approx(1.0)


@pytest.mark.gpu
def test_cpu_and_cuda_codes_agree() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    model = HashNet(HashNetConfig())
    rois = _rois(64, HashNetConfig(), seed=3)
    cpu = encode(model, rois, device="cpu")
    gpu = encode(model, rois, device="cuda")
    model.to("cpu")
    np.testing.assert_allclose(gpu.embedding, cpu.embedding, atol=1e-4)
    # a bit may flip only where its relaxed value is within float error of 0
    differing = np.unpackbits(gpu.rows() ^ cpu.rows()).sum()
    assert differing <= 0.001 * cpu.rows().size * 8, differing
