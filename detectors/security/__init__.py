"""Indicators of data poisoning and of attacks on a deployed model (the ML-security threats).

Poisoning: ``label_consistency`` (label flipping), ``group_outcome`` (targeted outcomes), ``backdoor``
(anomalous inputs concentrated on one class). Attacks, per client: ``evasion``, ``extraction`` (model
stealing, PRADA), ``probing`` (membership inference / inversion). Each is a module of its own.
"""
