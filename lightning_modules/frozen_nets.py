"""Frozen helper networks of prediction modules (a generator, F, classifiers) kept out of the module's state.

A 1024 px StyleGAN or a judge must not be copied into every checkpoint or counted as trainable, yet must follow the
LightningModule's device and dtype moves. Modules keep them in ``self._nets`` (a plain dict, so ``nn.Module`` does not
register them) and inherit :class:`FrozenNets`, whose ``_apply`` forwards every move to them.
"""
from __future__ import annotations

from torch import nn


class FrozenNets:
    """Mixin for a LightningModule with ``self._nets`` (name → module) and ``self.generator_source``.

    ``generator`` loads ``generator_source`` with :func:`lrface.weights.load_generator` on first use (unless a module
    was put in ``self._nets["G"]``).
    """

    _nets: dict

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for net in self._nets.values():
            if isinstance(net, nn.Module):
                net._apply(fn, *args, **kwargs)
        return self

    @property
    def generator(self) -> nn.Module:
        if "G" not in self._nets:
            from lrface.weights import load_generator

            self._nets["G"] = load_generator(self.generator_source)
        return self._nets["G"]
