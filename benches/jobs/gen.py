#!/usr/bin/env python3
"""Tables of the job benchmarks: `gen.py N DIR` writes DIR/impressions.csv and
DIR/purchases.csv, N rows each, N/2 identifiers shared, 7 campaigns; prints the expected
result (buyers and revenue over all campaigns) computed plainly."""
import os
import sys

n, out = int(sys.argv[1]), sys.argv[2]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "impressions.csv"), "w") as f:
    f.write("email,campaign\n")
    for i in range(n):
        f.write(f"user{i}@example.com,c{i % 7}\n")
buyers = revenue = 0
with open(os.path.join(out, "purchases.csv"), "w") as f:
    f.write("email,amount\n")
    for i in range(n // 2, n // 2 + n):
        amount = i % 100 + 1
        f.write(f"user{i}@example.com,{amount}\n")
        if i < n:
            buyers += 1
            revenue += amount
print(f"expected buyers {buyers} revenue {revenue}")
