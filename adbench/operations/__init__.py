"""Operations on the whole suite: the exact gate's golden files, seed spreads, the cost of a profile."""
