"""uqpot.data"""
