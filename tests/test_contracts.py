"Contract tests over the registries: every model and every scheme behaves."
import pytest
import torch

from fairnb.losses import MarginLoss
from fairnb.models import MODELS, CosFace, create_model
from fairnb.schemes import SCHEMES, BatchOut, get_scheme


MODEL_ARGS = {'densenet121': dict(num_classes=5), 'small_cnn': dict(num_classes=5)}   # the others are face backbones


def test_every_model_is_covered():
    assert set(MODELS) == set(MODEL_ARGS) | {'resnet18', 'resnet152', 'face_cnn'}


@pytest.mark.parametrize('name', sorted(MODELS))
def test_model_forward_backward(name):
    torch.manual_seed(0)
    m = create_model(name, **MODEL_ARGS.get(name, dict(emb_size=32, img_size=64)))
    x = torch.randn(2, 3, 64, 64)
    out = m(x)
    assert out.shape == (2, MODEL_ARGS.get(name, {}).get('num_classes', 32)) and torch.isfinite(out).all()
    out.sum().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def _batch(seed, groups):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(groups), 5, generator=g, requires_grad=True)
    targets = (torch.rand(len(groups), 5, generator=g) > 0.5).float()
    losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction='none').mean(1)
    return BatchOut(losses, logits, targets, torch.tensor(groups))


STATEFUL = {'fair_features'}   # its discriminator takes a step on every call


def _scheme(name, penalty_on='train'):
    s = get_scheme(name, alpha=1.0, penalty_on=penalty_on, flip_group='female', flip_rate=0.5, margin_group='female', penalized_group='male')
    s.setup(MarginLoss(CosFace(5, 4)))   # what fit does first; fair_features builds its discriminator for 5-d features here
    return s


@pytest.mark.parametrize('name', sorted(SCHEMES))
@pytest.mark.parametrize('penalty_on', ['train', 'holdout'])
@pytest.mark.parametrize('groups', [[0, 1, 0, 1, 1, 0], [1, 1, 1, 1], [0]])
def test_scheme_gives_finite_differentiable_scalar(name, penalty_on, groups):
    s = _scheme(name, penalty_on)
    out, hold = _batch(0, groups), _batch(1, groups[::-1])
    out.targets = s.targets(out.targets, out.groups)
    loss = s(out, hold)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(out.logits.grad).all()
    again = _scheme(name, penalty_on) if name in STATEFUL else s      # same state, same batch: same loss
    assert _scheme(name, penalty_on)(_batch(0, groups), _batch(1, groups[::-1])).item() == again(_batch(0, groups), hold).item()


@pytest.mark.parametrize('name', ['eq_loss', 'eq_odds', 'disp_impact'])
def test_holdout_penalty_comes_from_the_holdout_batch(name):
    "With penalty_on='holdout', the penalty term moves with the holdout batch and not with the training batch's groups."
    s = _scheme(name, 'holdout')
    out = _batch(0, [0, 1, 0, 1, 1, 0])
    a = s(out, _batch(1, [0, 1, 0, 1])).item()
    b = s(out, _batch(2, [0, 1, 0, 1])).item()
    assert a != b
    flipped = _batch(0, [1, 0, 1, 0, 0, 1])              # same losses, other groups: the holdout penalty ignores them
    assert s(flipped, _batch(1, [0, 1, 0, 1])).item() == a


def test_unknown_scheme_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"choose one of \['baseline', 'disp_impact', 'eq_loss', 'eq_odds', 'fair_features', 'label_flip', 'margins', 'minmax'\]"):
        get_scheme('equalise')
