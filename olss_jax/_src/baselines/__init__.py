"""Classical linear multistep schedulers expressed as `Schedule`s (paper Section 3.1, Eq. 8-9)."""
