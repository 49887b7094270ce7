"""Looking at shards: notebook helpers (:mod:`~pipeline.views.shard_views`) and the README
figures (:mod:`~pipeline.views.figures`). Nothing in the preprocessing core imports this."""
