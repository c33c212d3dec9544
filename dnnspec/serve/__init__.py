"""dnnspec.serve"""
