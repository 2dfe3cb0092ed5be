"""The dual-branch wrapper: one backbone pass, exact softmax branch, frozen parts that really stay frozen."""
import pytest
import torch
from torch import nn

from dualcam_lib.heads import DualBranchModel, DualOutput, freeze, replicate_head
from dualcam_lib.models import GapLinearHead, PoolMLPHead, TokenHead, build_classifier

C = 5
# architecture -> input size used in the tests (small where the architecture allows; Inception-v3 needs >= 75)
ARCHS = {
    "small_cnn": 64, "resnet18": 64, "resnet50": 64, "mobilenet_v2": 64, "vgg16": 64, "vgg16_gap": 64,
    "inception_v3": 75, "inception_v3_gap": 64, "efficientnet_lite0": 64, "small_vit": 64,
}
_SPLITS, _DUALS = {}, {}


@pytest.fixture(scope="module", autouse=True)
def _release_models():
    yield
    _SPLITS.clear()
    _DUALS.clear()


def split_for(name):
    """One random-init split per architecture for the whole module (DualBranchModel only freezes it)."""
    if name not in _SPLITS:
        torch.manual_seed(0)
        _SPLITS[name] = build_classifier(name, num_classes=C)
    return _SPLITS[name]


def dual_for(name):
    """One fresh-init dual model per architecture, shared by the tests that only train or read its sigmoid head
    (replicating VGG-16's 120M-parameter MLP head once, not twice)."""
    if name not in _DUALS:
        _DUALS[name] = DualBranchModel(split_for(name), init="fresh")
    return _DUALS[name]


def _count_calls(module):
    calls = []
    return calls, module.register_forward_hook(lambda m, i, o: calls.append(1))


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_both_logits_from_one_backbone_pass(name):
    split = split_for(name)
    dual = dual_for(name).eval()
    size = ARCHS[name]
    x = torch.randn(2, 3, size, size)
    calls, handle = _count_calls(dual.backbone)
    with torch.no_grad():
        out = dual(x)
    handle.remove()
    assert len(calls) == 1
    assert isinstance(out, DualOutput)
    assert out.softmax_logits.shape == out.sigmoid_logits.shape == (2, C)
    with torch.no_grad():
        features = split.backbone(x)
        assert torch.equal(out.features, features)
        assert torch.equal(out.softmax_logits, split.head(features))  # the softmax branch IS the original model
        assert torch.equal(out.sigmoid_logits, dual.sigmoid_head(features))
        kept = features.clone()
        dual.heads(features)
        assert torch.equal(features, kept)  # heads never modify the shared features in place
    assert not torch.equal(out.sigmoid_logits, out.softmax_logits)  # a different (fresh or trained) head


def _snapshot(t):
    # Exact copies, except for the few huge tensors (VGG-16's MLP) where a 64-bit XOR hash of every element plus
    # the sum stands in for a 400 MB copy: any update of the tensor changes both.
    t = t.detach()
    if t.numel() > 4_000_000:
        return torch.hash_tensor(t).view(torch.int64).item(), float(t.sum())
    return t.clone()


def _same(a, b):
    return a == b if isinstance(a, tuple) else torch.equal(a, b)


def _frozen_state(dual):
    return {f"{prefix}.{k}": _snapshot(v)
            for prefix, mod in (("backbone", dual.backbone), ("softmax_head", dual.softmax_head))
            for k, v in mod.state_dict().items()}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "vgg16" else n
                                  for n in sorted(ARCHS)])
def test_frozen_parts_unchanged_after_training_with_weight_decay(name):
    dual = dual_for(name)
    before = _frozen_state(dual)
    head_before = {k: _snapshot(v) for k, v in dual.sigmoid_head.state_dict().items()}
    # an optimiser over ALL parameters, with weight decay: frozen ones must still not move
    if name == "vgg16":  # 120M-parameter MLP head: plain SGD keeps the test's memory and time small
        opt = torch.optim.SGD(dual.parameters(), lr=0.05, weight_decay=0.1)
    else:
        opt = torch.optim.AdamW(dual.parameters(), lr=1e-2, weight_decay=0.1)
    dual.train()
    assert dual.training and dual.sigmoid_head.training
    assert not dual.backbone.training and not dual.softmax_head.training
    assert all(not m.training for m in dual.backbone.modules())  # batch-norm statistics frozen
    size = ARCHS[name]
    x, y = torch.randn(4, 3, size, size), torch.randint(0, C, (4,))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(C - 1)))
    for _ in range(1 if name == "vgg16" else 2):
        opt.zero_grad()
        out = dual(x)
        loss = loss_fn(out.sigmoid_logits, nn.functional.one_hot(y, C).float())
        loss.backward()
        opt.step()
    after = _frozen_state(dual)
    assert before.keys() == after.keys()
    changed = [k for k in before if not _same(before[k], after[k])]
    assert changed == []
    assert all(not p.requires_grad for p in [*dual.backbone.parameters(), *dual.softmax_head.parameters()])
    assert all(p.grad is None for p in [*dual.backbone.parameters(), *dual.softmax_head.parameters()])
    head_after = {k: _snapshot(v) for k, v in dual.sigmoid_head.state_dict().items()}
    assert all(not _same(head_before[k], head_after[k]) for k in head_before)  # every sigmoid-head tensor moved
    assert [id(p) for p in dual.trainable_parameters()] == [id(p) for p in dual.sigmoid_head.parameters()]


def _heads():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(32, 16), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(16, 16), nn.ReLU(True),
                        nn.Dropout(0.5), nn.Linear(16, C))
    token = TokenHead(32, C, pool="mean", num_prefix_tokens=1, dropout=0.1, norm=nn.LayerNorm(32))
    with torch.no_grad():
        token.norm.weight.mul_(3.0)  # a "trained" norm
    return {
        "gap_linear": (GapLinearHead(32, C, dropout=0.2), torch.randn(3, 32, 4, 4)),
        "pool_mlp": (PoolMLPHead(nn.AdaptiveAvgPool2d(1), mlp), torch.randn(3, 32, 4, 4)),
        "token": (token, torch.randn(3, 1 + 16, 32)),
    }


def _structure(module):
    return [(type(m).__name__, getattr(m, "p", None)) for m in module.modules()], \
        [(n, tuple(p.shape)) for n, p in module.named_parameters()]


@pytest.mark.parametrize("kind", ["gap_linear", "pool_mlp", "token"])
@pytest.mark.parametrize("init", ["fresh", "default", "copy"])
def test_replicate_head_keeps_the_architecture(kind, init):
    head, features = _heads()[kind]
    head.eval()
    new = replicate_head(head, init=init, std=0.01).eval()
    assert _structure(new) == _structure(head)  # same layers, same dropout rates, same shapes
    assert not {p.data_ptr() for p in new.parameters()} & {p.data_ptr() for p in head.parameters()}
    with torch.no_grad():
        same = torch.equal(new(features), head(features))
    assert same == (init == "copy")
    linears = [m for m in new.modules() if isinstance(m, nn.Linear)]
    if init == "fresh":
        for m in linears:
            assert torch.all(m.bias == 0)
            assert abs(m.weight.std().item() - 0.01) < 0.004
    if init in ("fresh", "default") and kind == "token":
        assert torch.all(new.norm.weight == 1)  # the norm is reset, not inherited from the softmax head


def test_replicate_head_rejects_bad_options():
    with pytest.raises(ValueError, match="head init must be one of"):
        replicate_head(GapLinearHead(4, 2), init="xavier")
    with pytest.raises(ValueError, match="init_std"):
        replicate_head(GapLinearHead(4, 2), std=0.0)


def test_copy_init_starts_equal_to_the_softmax_branch():
    dual = DualBranchModel(split_for("small_cnn"), init="copy")
    with torch.no_grad():
        out = dual(torch.randn(2, 3, 64, 64))
    assert torch.equal(out.softmax_logits, out.sigmoid_logits)
    assert dual.head_init == "copy"


def test_new_model_starts_in_eval_and_eval_puts_everything_in_eval():
    dual = DualBranchModel(split_for("resnet18"))
    assert not any(m.training for m in dual.modules())
    dual.train()
    assert dual.sigmoid_head.training and not dual.softmax_head.training
    dual.eval()
    assert not any(m.training for m in dual.modules())


@pytest.mark.parametrize("name", ["small_cnn", "small_vit", "resnet18"])
def test_state_dict_round_trip(name):
    torch.manual_seed(1)
    dual = DualBranchModel(split_for(name))
    dual.train()
    opt = torch.optim.SGD(dual.trainable_parameters(), lr=0.5)
    x = torch.randn(2, 3, 64, 64)
    dual(x).sigmoid_logits.sum().backward()
    opt.step()
    dual.eval()
    torch.manual_seed(2)
    other = DualBranchModel(build_classifier(name, num_classes=C))  # different random weights everywhere
    other.load_state_dict(dual.state_dict(), strict=True)
    with torch.no_grad():
        a, b = dual(x), other(x)
    assert torch.equal(a.softmax_logits, b.softmax_logits) and torch.equal(a.sigmoid_logits, b.sigmoid_logits)
    assert set(dual.state_dict()) == {f"{p}.{k}" for p, mod in (("backbone", dual.backbone),
                                                                 ("softmax_head", dual.softmax_head),
                                                                 ("sigmoid_head", dual.sigmoid_head))
                                      for k in mod.state_dict()}


def test_freeze_sets_eval_and_no_grad():
    m = freeze(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train())
    assert not m.training and not any(p.requires_grad for p in m.parameters())
