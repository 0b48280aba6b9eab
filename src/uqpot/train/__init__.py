"""uqpot.train"""
