"""Box readers against hand-written PASCAL-VOC XML, JSON and CSV files."""

import json

import pytest

from vit_jax.analysis import boxes
from vit_jax.analysis import validate

# An ILSVRC train annotation as ILSVRC writes it (<filename> without
# extension), with a box of another class.
ILSVRC_XML = """<annotation>
	<folder>n01440764</folder>
	<filename>n01440764_96</filename>
	<source><database>ILSVRC_2012</database></source>
	<size><width>500</width><height>375</height><depth>3</depth></size>
	<segmented>0</segmented>
	<object>
		<name>n01440764</name><pose>Unspecified</pose>
		<truncated>0</truncated><difficult>0</difficult>
		<bndbox>
			<xmin>34</xmin><ymin>128</ymin><xmax>430</xmax><ymax>305</ymax>
		</bndbox>
	</object>
	<object>
		<name>n09999999</name>
		<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>500</xmax><ymax>10</ymax></bndbox>
	</object>
	<object>
		<name>n01440764</name>
		<bndbox><xmin>7</xmin><ymin>8</ymin><xmax>9</xmax><ymax>10</ymax></bndbox>
	</object>
</annotation>
"""


def test_voc_xml_reads_every_object_and_the_size(tmp_path):
  p = tmp_path / 'a.xml'
  p.write_text(ILSVRC_XML)
  a = boxes.read_voc_xml(str(p))
  assert a.image == 'n01440764_96' and a.size == (500, 375)
  assert [(b.label, b.corners()) for b in a.boxes] == [
      ('n01440764', (34, 128, 430, 305)), ('n09999999', (1, 1, 500, 10)),
      ('n01440764', (7, 8, 9, 10))]
  own = boxes.own_class_boxes(a, boxes.image_class('n01440764_96.JPEG'))
  assert [b.corners() for b in own] == [(34, 128, 430, 305), (7, 8, 9, 10)]


def test_folder_of_xml_is_read_recursively_and_keyed_by_image(tmp_path):
  (tmp_path / 'n01440764').mkdir()
  (tmp_path / 'n01440764' / 'n01440764_96.xml').write_text(ILSVRC_XML)
  (tmp_path / 'notes.txt').write_text('not a box file')
  anns = boxes.read(str(tmp_path))
  assert list(anns) == ['n01440764_96']
  assert boxes.image_key('/data/train/n01440764/n01440764_96.JPEG') == (
      'n01440764_96')


def test_json_and_csv_give_the_same_annotations(tmp_path):
  rows = [('n02129165_lion.JPEG', 'n02129165', 163, 257, 210, 360),
          ('n02129165_lion.JPEG', 'n09999999', 1, 2, 3, 4),
          ('n04037443_racer.JPEG', 'n04037443', 54, 104, 449, 276)]
  keys = ('image', 'label', 'xmin', 'ymin', 'xmax', 'ymax')
  (tmp_path / 'b.json').write_text(json.dumps([dict(zip(keys, r))
                                               for r in rows]))
  (tmp_path / 'b.csv').write_text(
      'image,label,xmin,ymin,xmax,ymax\n' +
      ''.join(','.join(map(str, r)) + '\n' for r in rows))
  for name in ('b.json', 'b.csv'):
    anns = boxes.read(str(tmp_path / name))
    assert sorted(anns) == ['n02129165_lion', 'n04037443_racer']
    lion = anns['n02129165_lion']
    assert [(b.label, b.corners()) for b in lion.boxes] == [
        ('n02129165', (163, 257, 210, 360)), ('n09999999', (1, 2, 3, 4))]
    assert lion.size is None
    assert [b.corners() for b in boxes.own_class_boxes(
        lion, 'n02129165')] == [(163, 257, 210, 360)]


def test_inclusive_one_based_slices():
  """`1 1 W H` is the whole image; a box xmin = xmax is one column."""
  assert boxes.Box('x', 1, 1, 500, 375).slices() == (slice(0, 375),
                                                     slice(0, 500))
  assert boxes.Box('x', 7, 8, 7, 10).slices() == (slice(7, 10), slice(6, 7))


def test_class_comes_from_the_file_name():
  assert boxes.image_class('/x/n02099601_golden_retriever.JPEG') == (
      'n02099601')
  with pytest.raises(validate.AnalysisError, match='cat.jpg: the image class'):
    boxes.image_class('cat.jpg')


@pytest.mark.parametrize('text,message', [
    ('<annotation><object><name>n1</name><bndbox><xmin>5</xmin><ymin>1'
     '</ymin><xmax>4</xmax><ymax>3</ymax></bndbox></object></annotation>',
     r'a.xml object 0: box n1 \(xmin, ymin, xmax, ymax\) = \(5, 1, 4, 3\) '
     'has xmin > xmax'),
    ('<annotation><object><name>n1</name><bndbox><xmin>1.5</xmin><ymin>1'
     '</ymin><xmax>4</xmax><ymax>3</ymax></bndbox></object></annotation>',
     "a.xml object 0: xmin '1.5' is not an integer"),
    ('<annotation><object><name>n1</name><bndbox><xmin>1</xmin>'
     '</bndbox></object></annotation>', 'needs xmin, ymin, xmax, ymax'),
    ('<annotation><object>', 'cannot read boxes .*a.xml'),
    ('<boxes/>', 'expected <annotation>'),
])
def test_bad_xml_is_one_line_naming_the_file(tmp_path, text, message):
  (tmp_path / 'a.xml').write_text(text)
  with pytest.raises(validate.AnalysisError, match=message) as e:
    boxes.read(str(tmp_path / 'a.xml'))
  assert '\n' not in str(e.value)


def test_bad_json_csv_and_paths(tmp_path):
  (tmp_path / 'a.json').write_text(json.dumps([{'image': 'n1_a.jpg',
                                                'label': 'n1', 'xmin': 1}]))
  with pytest.raises(validate.AnalysisError,
                     match='a.json record 0: missing ymin, xmax, ymax'):
    boxes.read(str(tmp_path / 'a.json'))
  (tmp_path / 'a.csv').write_text('image,xmin\nx,1\n')
  with pytest.raises(validate.AnalysisError,
                     match='a.csv: header lacks label, ymin, xmax, ymax'):
    boxes.read(str(tmp_path / 'a.csv'))
  with pytest.raises(validate.AnalysisError, match='no such file or folder'):
    boxes.read(str(tmp_path / 'none.xml'))
  (tmp_path / 'a.txt').write_text('')
  with pytest.raises(validate.AnalysisError, match='are .xml, .json or .csv'):
    boxes.read(str(tmp_path / 'a.txt'))
  (tmp_path / 'd').mkdir()
  (tmp_path / 'd' / 'one.xml').write_text(ILSVRC_XML)
  (tmp_path / 'd' / 'two.xml').write_text(ILSVRC_XML)
  with pytest.raises(validate.AnalysisError,
                     match='two.xml: image n01440764_96 already has boxes'):
    boxes.read(str(tmp_path / 'd'))


def test_boxes_are_checked_against_the_real_image_size():
  a = boxes.Annotation('n1_a.jpg', [], (500, 375), 'a.xml')
  inside = boxes.Box('n1', 1, 1, 500, 375, 'a.xml object 0')
  over = boxes.Box('n1', 0, 10, 501, 20, 'a.xml object 1')
  assert boxes.check_in_image(a, [inside], 500, 375, 'a.jpg') == [inside]
  with pytest.raises(validate.AnalysisError,
                     match=r'a.xml object 1: box n1 \(xmin, ymin, xmax, '
                     r'ymax\) = \(0, 10, 501, 20\) lies outside the image '
                     r'a.jpg \(500x375: allowed 1..500, 1..375'):
    boxes.check_in_image(a, [over], 500, 375, 'a.jpg')
  clipped = boxes.check_in_image(a, [over], 500, 375, 'a.jpg', clip=True)
  assert [b.corners() for b in clipped] == [(1, 10, 500, 20)]
  with pytest.raises(validate.AnalysisError,
                     match='a.xml: <size> 500x375 differs from the image '
                     'a.jpg 400x375'):
    boxes.check_in_image(a, [inside], 400, 375, 'a.jpg')
