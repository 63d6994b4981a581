"""SGD against θ ← θ − lr·(g + λθ) and heavy-ball momentum b ← μb + g, written out plainly."""
import torch

from harness.schema import parse
from methods import sgd
from tests.methods.common import gradient_sequence, make_params, run_optimizer


def test_sgd_matches_the_rule_with_and_without_momentum():
    for momentum in (0.0, 0.9):
        params = make_params()
        start = [p.detach().clone() for p in params]
        grads = gradient_sequence(params, 20)
        options = parse(sgd.Options, {"lr": 0.05, "momentum": momentum, "weight_decay": 0.01}, "method.optimizer")
        optimizer = sgd.build(list(enumerate(params)), options, torch.device("cpu"))
        run_optimizer(optimizer, params, grads)
        theta, buf = start, [None] * len(start)
        for step_grads in grads:
            for i, g in enumerate(step_grads):
                d = g + 0.01 * theta[i]
                if momentum:
                    buf[i] = d if buf[i] is None else momentum * buf[i] + d
                    d = buf[i]
                theta[i] = theta[i] - 0.05 * d
        for p, e in zip(params, theta, strict=True):
            torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-12)
        if momentum:  # one buffer per parameter, the rule's b
            for p, b in zip(params, buf, strict=True):
                torch.testing.assert_close(optimizer.state[p]["momentum_buffer"], b, rtol=1e-12, atol=1e-12)
        else:
            assert not optimizer.state
