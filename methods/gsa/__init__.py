"""GSA (Generalist-to-Specialist Adaptation), paper Algorithm 1.

- ``pretrain``: task-agnostic world-model pre-training on non-curated offline data (Section 3.2, Eq. 1).
- ``retrieval``: the faiss index over first-frame encoder features and the top-k query (Section 3.3, Eq. 4).

Fine-tuning with experience rehearsal and execution guidance builds on these (issue 5). Nothing heavy is
imported here.
"""
