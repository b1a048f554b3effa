"""`make bench-sim`: the engine on a simulated multi-node GPU cluster (ray.cluster_utils), model=sim.

harness.py starts the cluster and runs the real launcher against it; scenarios.py holds what the issue asks to
measure; ideal.py the zero-overhead schedule the efficiency is compared with; report.py writes sim.{json,md}.
"""
