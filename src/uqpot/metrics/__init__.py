"""uqpot.metrics"""
