"""uqpot.nn"""
