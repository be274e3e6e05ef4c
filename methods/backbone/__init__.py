"""The shared world-model backbone (GSA Section 3.2, Table 5): every method composes these parts.

- ``config``: :class:`WorldModelConfig`, :class:`ActorCriticConfig` and their presets (paper/small/tiny/debug).
- ``world_model``: :class:`WorldModel` (encoders, RSSM, decoders, reward and continue heads, ``loss``).
- ``rssm``: the block-GRU RSSM with discrete latents.
- ``actor_critic``: :class:`ActorCritic` trained in imagination (lambda-returns, return normalisation,
  slow critic, entropy over the task's action dims).
- ``checkpoint``: safe save/load with size checks.
- ``nets``: layers, symlog/two-hot, the optimiser wrapper.

Nothing heavy happens at import; torch is imported by the submodules only.
"""
