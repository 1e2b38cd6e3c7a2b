"""video_aot.export"""
