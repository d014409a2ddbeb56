"""The toy world: generated data (vlselect.toy.world) and the tiny models trained on its corpus."""
