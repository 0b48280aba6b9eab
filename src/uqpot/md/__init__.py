"""uqpot.md"""
