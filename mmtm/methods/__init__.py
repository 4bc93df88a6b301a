"""Published modality-imbalance remedies, as small pure functions on tensors, for the training policies.

One module per method; each docstring cites the paper and the official code it was checked against, states the
published defaults, and says how the method maps onto the two-head MMTM network (m0 = view 0 = branch 0 = head ŷ0,
m1 = view 1 = branch 1 = head ŷ1):

    ogm_ge      OGM-GE, on-the-fly gradient modulation + Gaussian noise (Peng et al., CVPR 2022)
    g_blending  Gradient-Blending weights from the overfitting-to-generalisation ratio (Wang et al., CVPR 2020)
    moddrop     modality dropout, one view zeroed per dropped sample (Neverova et al., TPAMI 2016)
    pmr         prototypical modal rebalance (Fan et al., CVPR 2023)
    mmpareto    Pareto-combined multi-modal and uni-modal gradients per encoder (Wei & Hu, ICML 2024)
    agm         adaptive gradient modulation from zeroed-view responses (Li et al., ICCV 2023)
    opm         on-the-fly prediction modulation, the dominant view's features dropped (Wei et al., TPAMI 2024)
    umt         uni-modal teachers: feature distillation from single-view runs (Du et al., ICML 2023)
    ume         uni-modal ensemble: two single-view runs' averaged logits, an evaluation (Du et al., ICML 2023)
    relearn     Diagnosing & Re-learning, purity-gap soft re-initialisation (Wei, Li, Feng, Hu, ECCV 2024)

Nothing here touches the training loop; the integrator calls these functions at the points each docstring names.
"""
