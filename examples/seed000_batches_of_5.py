"""Seed 000: comments in batches of 5, one OpenAI call each, a DB commit per batch.

python examples/seed000_batches_of_5.py
"""

from __future__ import annotations

import sqlite3
from typing import Any

from _endpoint import endpoint
from openai import OpenAI

import conveyor


def main() -> None:
    comments = [{"reddit_id": f"t1_{i}", "body": f"comment {i}"} for i in range(23)]
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.execute("CREATE TABLE analysis (reddit_id TEXT PRIMARY KEY, result TEXT)")
    with endpoint(rate_500=0.05) as base_url:
        client = OpenAI(base_url=base_url, max_retries=0)

        def analyse(comment: dict[str, Any]) -> str:
            messages = [
                {"role": "system", "content": "Classify the comment."},
                {"role": "user", "content": comment["body"]},
            ]
            reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
            return reply.choices[0].message.content or ""

        def commit_batch(batch: conveyor.BatchInfo) -> None:
            # Every worker of the batch has finished: (comment, result_or_error) pairs.
            rows = [(r.item["reddit_id"], r.value) for r in batch.results if r.ok]
            db.executemany("INSERT INTO analysis VALUES (?, ?)", rows)
            db.commit()
            for r in batch.results:
                if not r.ok:
                    print(f"  {r.item['reddit_id']} failed: {r.error.message}")

        report = conveyor.run(
            comments,
            analyse,
            waves=True,
            batch_size=5,  # ThreadPoolExecutor(max_workers=5), a barrier per batch
            key=lambda c: c["reddit_id"],
            on_batch=commit_batch,  # logs "Processed batch n/total: k comments complete"
        )
    print(report.summary())
    print("rows committed:", db.execute("SELECT count(*) FROM analysis").fetchone()[0])


if __name__ == "__main__":
    main()
