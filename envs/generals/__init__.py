"""Simulated Generals.io: a batched numpy engine with the rules of `generals-bots` 2.5.0,
seeded maps, and the env APIs the rest of Harvest speaks."""
