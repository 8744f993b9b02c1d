"""Tools over the topics: replaying the journal, reading an instance's history."""
