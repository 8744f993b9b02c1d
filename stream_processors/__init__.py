"""The engine underneath Sagalog: processor loop, transactions, store, changelog, restore."""
