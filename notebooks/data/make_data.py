"""Regenerates the bundled demo data (deterministic): python make_data.py"""

import numpy as np
import pandas as pd

rng = np.random.default_rng(20261122)

# Daily sales, 2026-01-01 .. 2027-12-31, 4 regions x 4 products.
days = pd.date_range("2026-01-01", "2027-12-31", freq="D")
regions = {"North": 1.0, "South": 0.8, "East": 1.2, "West": 0.9}
products = {"Widget": 19.0, "Gadget": 49.0, "Gizmo": 129.0, "Doohickey": 9.5}
rows = []
for day in days:
    season = 1 + 0.15 * np.sin(2 * np.pi * day.dayofyear / 365) + (0.25 if day.month == 12 else 0)
    weekday = 0.7 if day.dayofweek >= 5 else 1.0
    for region, scale in regions.items():
        for product, price in products.items():
            units = rng.poisson(60 * scale * season * weekday * (30 / price) ** 0.5)
            rows.append((day.date().isoformat(), region, product, units, round(units * price, 2)))
pd.DataFrame(rows, columns=["date", "region", "product", "units", "revenue"]).to_csv(
    "sales.csv", index=False
)

# API latency per service every 5 minutes over one week (mapped onto any date by weekday).
stamps = pd.date_range("2026-01-05", periods=7 * 24 * 12, freq="5min")  # Monday 00:00 on
services = {"search": 120.0, "checkout": 340.0, "login": 80.0}
rows = []
for stamp in stamps:
    busy = 1 + 0.4 * np.sin(2 * np.pi * (stamp.hour * 60 + stamp.minute) / 1440 - 1.5)
    for service, base in services.items():
        p95 = base * busy * rng.lognormal(0, 0.08)
        errors = max(0.0, rng.normal(0.004, 0.002))
        rows.append((stamp.isoformat(), service, round(p95, 1), round(errors, 4)))
pd.DataFrame(rows, columns=["timestamp", "service", "p95_ms", "error_rate"]).to_csv(
    "api_latency.csv", index=False
)
