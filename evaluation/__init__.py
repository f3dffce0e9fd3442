"""Side-by-side comparison of networks on the machine at hand (``python evaluation/compare.py``).

    compare    the script: options, the loop over models, compare.csv / compare.md / compare.png
    published  published ImageNet figures and eval preprocessing of each model's weights, with their source
    measure    latency, inference and training throughput and peak memory of one model run one way
    chart      the two-panel figure: top-1 against multiply-adds and against measured latency

It imports common/, never the scripts.
"""
