"""Lightning callbacks: best-metric tracking, EMA weights, backbone freeze phases, W&B image panels."""
