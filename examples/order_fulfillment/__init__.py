"""Order fulfilment, the example saga: charge the card, ship, refund if shipping fails."""
