"""The steps every request shares: who asks and what served, admission and recording, dispatch, committing a stream."""
