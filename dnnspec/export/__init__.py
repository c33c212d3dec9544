"""dnnspec.export"""
