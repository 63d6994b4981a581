"""Benchmark harness for memory-efficient deep-learning methods: config → isolated job → probes → result row."""
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
