"""video_aot.models"""
