"""Configs of the shared world model and of the imagination actor-critic, with their presets.

Defaults are the paper's (GSA Table 5, Appendix J) and ncrl's fine-tuning config (anchors.md section 1);
where those are silent, DreamerV3's (anchors.md section 4). Every field says where its value comes from.

Deter / hidden: Table 5 lists "Hidden dimension 12288, Deterministic dimension 1536"; ncrl's config has
them the other way round (deter 12288, hidden 1536). Counted with this backbone's layers for 64x64
pixels and 21-d padded actions (``benchmarks/bench_backbone_speed.py --count``):
  deter 12288 / hidden 1536 (ncrl):                world model 293.7M parameters  <- chosen: the paper's "280M"
  deter 1536 / hidden 12288 (Table 5 as printed):  world model 605.0M parameters
(actor + critic add 16.9M at 3 x 512 MLPs). A 12288-wide hidden layer feeds every hidden-wide layer (the
posterior's 12288-d embedding -> hidden layer alone is 151M), which is why the printed order cannot be
the 280M model; the block-diagonal GRU keeps a 12288-wide deterministic state affordable.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.errors import HarnessError
from methods.base import MAX_CHANNELS, MAX_LENGTH, MAX_PARAMS, MAX_WIDTH, ranged


@dataclass(frozen=True)
class WorldModelConfig:
    # --- RSSM (Table 5 "RSSM"; sizes from ncrl, see the module docstring on deter/hidden)
    deter: int = ranged(12288, ge=1, le=MAX_WIDTH)  # ncrl deter 12288 (Table 5 prints 1536 here; swapped, see above)
    hidden: int = ranged(1536, ge=1, le=MAX_WIDTH)  # ncrl hidden 1536 (Table 5 prints 12288 here; swapped, see above)
    stoch: int = ranged(32, ge=1, le=4096)  # Table 5: stochastic 32 x 96
    classes: int = ranged(96, ge=2, le=4096)  # Table 5: stochastic 32 x 96
    blocks: int = ranged(8, ge=1, le=MAX_WIDTH)  # Table 5: block number 8 (block-diagonal GRU recurrence)
    unimix: float = ranged(0.01, ge=0, lt=1)  # ncrl / DreamerV3: 1% uniform mixture in the latent categoricals
    free_nats: float = ranged(1.0, ge=0)  # ncrl / DreamerV3: KL clipped below 1 nat
    # --- loss scales (Eq. 1; ncrl "recon 1, dyn 1, repr 0.1"; DreamerV3 uses dyn 0.5)
    recon_scale: float = ranged(1.0, ge=0)  # ncrl recon 1
    dyn_scale: float = ranged(1.0, ge=0)  # ncrl dyn 1 (KL towards sg(posterior) trains the prior)
    rep_scale: float = ranged(0.1, ge=0)  # ncrl repr 0.1 (KL towards sg(prior) trains the encoder)
    reward_scale: float = ranged(1.0, ge=0)  # DreamerV3: reward head loss weight 1
    cont_scale: float = ranged(1.0, ge=0)  # DreamerV3: continue head loss weight 1
    # --- encoders / decoders
    # Table 5: CNN channels [96, 192, 384, 768] = depth x (1, 2, 4, 8)
    cnn_depth: int = ranged(96, ge=1, le=MAX_CHANNELS)
    # at most 6 halvings of 64-px images; Table 5 / ncrl: kernels 4,4,4,4 (stride 2: 64 -> 4 pixels)
    cnn_stages: int = ranged(4, ge=1, le=6)
    cnn_kernel: int = ranged(4, ge=2, le=16)  # even (validate); ncrl: kernel 4
    # Table 5: MLPs [512, 512, 512] (proprio encoder/decoder, reward, continue)
    mlp_layers: int = ranged(3, ge=0, le=32)
    mlp_units: int = ranged(512, ge=1, le=MAX_WIDTH)  # Table 5: MLPs [512, 512, 512]
    bins: int = ranged(255, ge=2, le=MAX_WIDTH)  # DreamerV3: two-hot reward over 255 bins in symlog space
    bin_range: float = ranged(20.0, gt=0, le=80)  # DreamerV3: bins span symlog values [-20, 20]
    # --- optimiser (Table 5 "Optimizer")
    lr: float = ranged(1e-4, gt=0)  # Table 5: learning rate 1e-4
    eps: float = ranged(1e-5, gt=0)  # Table 5: Adam eps 1e-5
    weight_decay: float = ranged(1e-6, ge=0)  # Table 5: weight decay 1e-6 (decoupled, AdamW)
    grad_clip: float = ranged(100.0, gt=0)  # Table 5: gradient clip 100 (global norm)
    # --- execution
    amp: bool = False             # bf16 autocast on CUDA only (ignored on the CPU); the paper does not say
    channels_last: bool = True    # CNN memory format (a speed choice; no effect on results)

    @property
    def stoch_flat(self) -> int:
        return self.stoch * self.classes

    @property
    def feat_dim(self) -> int:
        return self.deter + self.stoch_flat

    def approx_params(self) -> float:
        """A rough parameter count (RSSM, heads, a 64-px CNN encoder and decoder): a config that cannot fit in
        memory is refused with a message (``validate``) instead of failing inside an allocation."""
        d, h, sc, u, n = self.deter, self.hidden, self.stoch_flat, self.mlp_units, self.mlp_layers
        feat = d + sc
        rssm = 3 * d * h + sc * h + 3 * h * d + 4 * d * d / self.blocks + 2 * h * sc + d * h
        head = (feat * u + (n - 1) * u * u + u * self.bins) if n else feat * self.bins
        chans = [3] + [self.cnn_depth * 2 ** i for i in range(self.cnn_stages)]
        cnn = 2 * self.cnn_kernel ** 2 * sum(a * b for a, b in zip(chans, chans[1:]))
        start = chans[-1] * (64 // 2 ** self.cnn_stages) ** 2
        return rssm + 3 * head + cnn + feat * h + h * start

    def validate(self) -> None:
        if self.deter % self.blocks:
            raise HarnessError(f"deter={self.deter} must be a multiple of blocks={self.blocks} (block GRU)")
        if self.cnn_kernel % 2:
            raise HarnessError(f"cnn_kernel={self.cnn_kernel} must be even (stride-2 convs halve the image)")
        if self.approx_params() > MAX_PARAMS:
            raise HarnessError(f"the world model would have ~{self.approx_params():.3g} parameters, more than "
                               f"{MAX_PARAMS:.0e} fit in memory; lower deter, hidden, mlp_units or cnn_depth")

    def sizes(self) -> dict[str, int]:
        """The fields that fix parameter shapes: a checkpoint must match all of them."""
        return {k: getattr(self, k) for k in ("deter", "hidden", "stoch", "classes", "blocks", "cnn_depth",
                                              "cnn_stages", "cnn_kernel", "mlp_layers", "mlp_units", "bins")}


@dataclass(frozen=True)
class ActorCriticConfig:
    mlp_layers: int = ranged(3, ge=0, le=32)  # Table 5: MLPs [512, 512, 512]
    mlp_units: int = ranged(512, ge=1, le=MAX_WIDTH)  # Table 5: MLPs [512, 512, 512]
    horizon: int = ranged(16, ge=1, le=MAX_LENGTH)  # Table 5: imagine horizon 16 (DreamerV3 uses 15)
    gamma: float = ranged(0.99, ge=0, le=1)  # Table 5: discount 0.99
    lam: float = ranged(0.95, ge=0, le=1)  # Table 5: discount lambda 0.95
    entropy: float = ranged(1e-4, ge=0)  # Table 5: actor entropy coef 1e-4 (DreamerV3 uses 3e-4)
    slow_critic_fraction: float = ranged(0.02, ge=0, le=1)  # Table 5: target critic update fraction 0.02 (every update)
    slow_reg: float = ranged(1.0, ge=0)  # DreamerV3: weight of the critic's regulariser towards the slow critic
    actor_lr: float = ranged(8e-5, gt=0)  # Table 5: actor critic learning rate 8e-5
    critic_lr: float = ranged(8e-5, gt=0)  # Table 5: actor critic learning rate 8e-5
    eps: float = ranged(1e-5, gt=0)  # Table 5: Adam eps 1e-5
    weight_decay: float = ranged(1e-6, ge=0)  # Table 5: weight decay 1e-6
    grad_clip: float = ranged(100.0, gt=0)  # Table 5: gradient clip 100
    # DreamerV3 paper: backprop through the dynamics for continuous actions ("reinforce": score-function gradient, as
    # DreamerV3 uses for discrete)
    actor_grad: str = ranged("dynamics", one_of=("dynamics", "reinforce"))
    min_std: float = ranged(0.1, gt=0)  # DreamerV3: bounded normal policy, std in [0.1, 1]
    max_std: float = ranged(1.0, gt=0)  # >= min_std (validate); DreamerV3
    return_low: float = ranged(5.0, ge=0, le=100)  # DreamerV3: return normalisation by the 5th..95th percentile range
    return_high: float = ranged(95.0, ge=0, le=100)  # > return_low (validate); DreamerV3
    return_decay: float = ranged(0.99, ge=0, lt=1)  # DreamerV3: EMA decay of the percentiles
    bins: int = ranged(255, ge=2, le=MAX_WIDTH)  # DreamerV3: two-hot critic over 255 symlog bins
    bin_range: float = ranged(20.0, gt=0, le=80)  # DreamerV3

    def validate(self) -> None:
        if self.min_std > self.max_std:
            raise HarnessError(f"min_std={self.min_std} must be <= max_std={self.max_std}")
        if self.return_low >= self.return_high:
            raise HarnessError(f"return_low={self.return_low} must be < return_high={self.return_high} (percentiles)")

    def sizes(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("mlp_layers", "mlp_units", "bins")}


# --- presets -----------------------------------------------------------------------------------------
# paper: the defaults above. Smaller presets keep every paper value except the ones named in comments.

PAPER_MODEL = WorldModelConfig()
PAPER_AC = ActorCriticConfig()

# small: DreamerV3's "S" size (deter/hidden 512, CNN depth 32, 32x32 latents, 2 x 512 MLPs).
SMALL_MODEL = WorldModelConfig(deter=512, hidden=512, classes=32, cnn_depth=32, mlp_layers=2, mlp_units=512)
SMALL_AC = ActorCriticConfig(mlp_layers=2, mlp_units=512)

# tiny: what this 2-core CPU can train in minutes (anchors.md section 6: "deter 256, 32x32 stoch,
# channels 16-128"). Deviations from the paper besides size: 32 x 16 latents (instead of 32 x 32: the
# heads' input shrinks from 1280 to 768, 1.3x cheaper updates), model lr 3e-4 and actor/critic lr 1e-4 /
# 3e-4 (faster value propagation in short CPU runs; measured on cartpole-balance).
TINY_MODEL = WorldModelConfig(deter=256, hidden=256, classes=16, cnn_depth=16, mlp_layers=2, mlp_units=256,
                              lr=3e-4)
TINY_AC = ActorCriticConfig(mlp_layers=2, mlp_units=256, actor_lr=1e-4, critic_lr=3e-4)

# debug: seconds per update, for tests only; meaningless as an agent.
DEBUG_MODEL = WorldModelConfig(deter=32, hidden=32, stoch=4, classes=4, blocks=2, cnn_depth=4, mlp_layers=1,
                               mlp_units=32, bins=15, lr=1e-3)
DEBUG_AC = ActorCriticConfig(mlp_layers=1, mlp_units=32, horizon=4, bins=15)
